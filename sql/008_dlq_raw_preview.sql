-- Issue 20: a job no codec can read (a foreign producer's pickle, corrupt bytes) keeps a bounded
-- preview of its raw body: base64 of at most its first 3,072 bytes (<= 4 KiB of text).
-- payload_omitted says why the arguments are missing; such an entry is not retryable.
ALTER TABLE dead_letter_queue
    ADD COLUMN raw_preview text CHECK (raw_preview IS NULL OR length(raw_preview) <= 4096);

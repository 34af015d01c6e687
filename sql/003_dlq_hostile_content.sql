-- Any failure can be stored (shared/dlq/content.py has the scheme and the bounds).
--
-- content_escaped: the row's text fields and the strings inside args/kwargs are in the reversible
-- escaped form (NUL and lone surrogates, which Postgres cannot hold, written as \u0000 / \udXXX,
-- backslashes doubled); readers and retries unescape them.
-- payload_omitted: NULL when args/kwargs are stored whole; otherwise why they are not (too large,
-- not JSON) with a bounded preview. Such an entry cannot be retried.
ALTER TABLE dead_letter_queue
    ADD COLUMN content_escaped boolean NOT NULL DEFAULT false,
    ADD COLUMN payload_omitted text;

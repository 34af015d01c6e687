-- Issue 20 follow-up: a DLQ retry links the retried job's run to the ORIGINAL failure.
--
-- With OpenTelemetry on, the DLQ row keeps, beside its trace_id (sql/008), the id of the span that
-- captured it (16 hex digits). A retry of the entry passes both to the new job (kwarg _tracelink),
-- whose run span gets an OpenTelemetry Link to that span (fmhl.link=redrive), while its parent is
-- the retry's own enqueuing span (the HTTP request): one API call gives one trace across the
-- service and the worker (shared/infra/tracing.py). Rows captured before this migration have no
-- span id: their retries run without the link.
ALTER TABLE dead_letter_queue
    ADD COLUMN span_id text CHECK (span_id IS NULL OR span_id ~ '^[0-9a-f]{16}$');

-- Issue 20.
--
-- 1. A job no codec can read (a foreign producer's pickle, corrupt bytes) keeps a bounded preview
--    of its raw body: base64 of at most its first 3,072 bytes (<= 4 KiB of text).
--    payload_omitted says why the arguments are missing; such an entry is not retryable.
ALTER TABLE dead_letter_queue
    ADD COLUMN raw_preview text CHECK (raw_preview IS NULL OR length(raw_preview) <= 4096);

-- 3. With OpenTelemetry on (shared/infra/tracing.py), the trace the failure was captured in
--    (32 hex digits), linked from the console's entry page through TRACE_URL_TEMPLATE.
ALTER TABLE dead_letter_queue
    ADD COLUMN trace_id text CHECK (trace_id IS NULL OR trace_id ~ '^[0-9a-f]{32}$');

-- 2. New and regressed failure kinds (Sentry's "new issue" / "regression"): a group (fingerprint,
--    queue, function, error type) seen for the first time is 'new'; one whose entries were all
--    resolved and that fails again is 'regressed'. The group row carries the latest of the two
--    (the console marks it) and each occurrence is one row of dlq_failure_kinds, which
--    fmhl_dlq_failure_kinds_total{queue,kind} counts (shared/dlq/failure_kinds.py). Decided in
--    the same trigger and transaction as the group counters, with their lock order, so two
--    concurrent captures of one new failure count it once. Groups that existed before this
--    migration are neither. Rows inserted already resolved (cancel, abort) make no kind.
ALTER TABLE dlq_groups
    ADD COLUMN kind text CHECK (kind IN ('new', 'regressed')),
    ADD COLUMN kind_at timestamptz;

CREATE TABLE dlq_failure_kinds (
    id          bigserial PRIMARY KEY,
    fingerprint text NOT NULL,
    queue_name  text NOT NULL,
    function    text NOT NULL,
    error_type  text NOT NULL,
    kind        text NOT NULL CHECK (kind IN ('new', 'regressed')),
    seen_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX dlq_failure_kinds_queue_kind_idx ON dlq_failure_kinds (queue_name, kind, id);

CREATE OR REPLACE FUNCTION dlq_groups_after_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    WITH agg AS (
        SELECT fingerprint, queue_name, function, error_type,
               count(*) FILTER (WHERE resolved_at IS NULL) AS unresolved,
               count(*) FILTER (WHERE resolved_at IS NOT NULL) AS resolved,
               min(failed_at) AS first_failed_at, max(failed_at) AS last_failed_at,
               (array_agg(error_message ORDER BY failed_at DESC))[1] AS sample_message
        FROM inserted
        GROUP BY fingerprint, queue_name, function, error_type
    ), upserted AS (
        INSERT INTO dlq_groups AS g (fingerprint, queue_name, function, error_type, unresolved_count,
                                     resolved_count, first_failed_at, last_failed_at, sample_message,
                                     kind, kind_at)
        SELECT fingerprint, queue_name, function, error_type, unresolved, resolved,
               first_failed_at, last_failed_at, sample_message,
               CASE WHEN unresolved > 0 THEN 'new' END, CASE WHEN unresolved > 0 THEN now() END
        FROM agg
        ORDER BY fingerprint, queue_name, function, error_type  -- one lock order: no deadlocks
        ON CONFLICT (fingerprint, queue_name, function, error_type) DO UPDATE SET
            unresolved_count = g.unresolved_count + EXCLUDED.unresolved_count,
            resolved_count   = g.resolved_count + EXCLUDED.resolved_count,
            first_failed_at  = least(g.first_failed_at, EXCLUDED.first_failed_at),
            last_failed_at   = greatest(g.last_failed_at, EXCLUDED.last_failed_at),
            sample_message   = CASE WHEN EXCLUDED.last_failed_at >= g.last_failed_at
                                    THEN EXCLUDED.sample_message ELSE g.sample_message END,
            kind    = CASE WHEN g.unresolved_count = 0 AND EXCLUDED.unresolved_count > 0
                           THEN 'regressed' ELSE g.kind END,
            kind_at = CASE WHEN g.unresolved_count = 0 AND EXCLUDED.unresolved_count > 0
                           THEN now() ELSE g.kind_at END
        RETURNING g.fingerprint, g.queue_name, g.function, g.error_type, g.unresolved_count,
                  (g.xmax = 0) AS created
    )
    INSERT INTO dlq_failure_kinds (fingerprint, queue_name, function, error_type, kind)
    SELECT u.fingerprint, u.queue_name, u.function, u.error_type,
           CASE WHEN u.created THEN 'new' ELSE 'regressed' END
    FROM upserted AS u
    JOIN agg AS a USING (fingerprint, queue_name, function, error_type)
    -- created, or updated from zero unresolved (the new count is exactly what this statement added)
    WHERE a.unresolved > 0 AND (u.created OR u.unresolved_count = a.unresolved);
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION dlq_groups_after_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM dlq_groups;
    DELETE FROM dlq_failure_kinds;
    RETURN NULL;
END
$$;

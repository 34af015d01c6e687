-- Failure groups as counters, so the aggregate views cost O(groups), not O(table).
--
-- One row per (fingerprint, queue, function, error type) with its unresolved and resolved entry
-- counts, first/last failure time and the latest message. Statement-level triggers with
-- transition tables keep it exact in the same transaction as every INSERT (capture), UPDATE
-- (resolve, retry) and DELETE (cleanup) of dead_letter_queue: one upsert per group per
-- statement, so a batched capture of 500 rows touches each group row once.
-- first_failed_at / last_failed_at are when this failure was first and last seen (any state);
-- cleanup does not move them back. A group whose counts both reach zero is deleted.

CREATE TABLE dlq_groups (
    fingerprint      text NOT NULL,
    queue_name       text NOT NULL,
    function         text NOT NULL,
    error_type       text NOT NULL,
    unresolved_count bigint NOT NULL DEFAULT 0 CHECK (unresolved_count >= 0),
    resolved_count   bigint NOT NULL DEFAULT 0 CHECK (resolved_count >= 0),
    first_failed_at  timestamptz NOT NULL,
    last_failed_at   timestamptz NOT NULL,
    sample_message   text NOT NULL DEFAULT '',
    PRIMARY KEY (fingerprint, queue_name, function, error_type)
);

INSERT INTO dlq_groups (fingerprint, queue_name, function, error_type, unresolved_count,
                        resolved_count, first_failed_at, last_failed_at, sample_message)
SELECT fingerprint, queue_name, function, error_type,
       count(*) FILTER (WHERE resolved_at IS NULL), count(*) FILTER (WHERE resolved_at IS NOT NULL),
       min(failed_at), max(failed_at), (array_agg(error_message ORDER BY failed_at DESC))[1]
FROM dead_letter_queue
GROUP BY fingerprint, queue_name, function, error_type;

CREATE FUNCTION dlq_groups_after_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO dlq_groups AS g (fingerprint, queue_name, function, error_type, unresolved_count,
                                 resolved_count, first_failed_at, last_failed_at, sample_message)
    SELECT fingerprint, queue_name, function, error_type,
           count(*) FILTER (WHERE resolved_at IS NULL),
           count(*) FILTER (WHERE resolved_at IS NOT NULL),
           min(failed_at), max(failed_at), (array_agg(error_message ORDER BY failed_at DESC))[1]
    FROM inserted
    GROUP BY fingerprint, queue_name, function, error_type
    ORDER BY fingerprint, queue_name, function, error_type  -- one lock order: no deadlocks
    ON CONFLICT (fingerprint, queue_name, function, error_type) DO UPDATE SET
        unresolved_count = g.unresolved_count + EXCLUDED.unresolved_count,
        resolved_count   = g.resolved_count + EXCLUDED.resolved_count,
        first_failed_at  = least(g.first_failed_at, EXCLUDED.first_failed_at),
        last_failed_at   = greatest(g.last_failed_at, EXCLUDED.last_failed_at),
        sample_message   = CASE WHEN EXCLUDED.last_failed_at >= g.last_failed_at
                                THEN EXCLUDED.sample_message ELSE g.sample_message END;
    RETURN NULL;
END
$$;

CREATE FUNCTION dlq_groups_after_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE dlq_groups AS g
    SET unresolved_count = g.unresolved_count + d.unresolved_delta,
        resolved_count   = g.resolved_count - d.unresolved_delta
    FROM (
        SELECT n.fingerprint, n.queue_name, n.function, n.error_type,
               sum((n.resolved_at IS NULL)::int - (o.resolved_at IS NULL)::int) AS unresolved_delta
        FROM updated_new AS n JOIN updated_old AS o USING (id)
        GROUP BY n.fingerprint, n.queue_name, n.function, n.error_type
        HAVING sum((n.resolved_at IS NULL)::int - (o.resolved_at IS NULL)::int) <> 0
    ) AS d
    WHERE g.fingerprint = d.fingerprint AND g.queue_name = d.queue_name
      AND g.function = d.function AND g.error_type = d.error_type;
    RETURN NULL;
END
$$;

CREATE FUNCTION dlq_groups_after_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Two statements: a data-modifying CTE cannot delete a row its sibling just updated.
    UPDATE dlq_groups AS g
    SET unresolved_count = g.unresolved_count - d.unresolved,
        resolved_count   = g.resolved_count - d.resolved
    FROM (
        SELECT fingerprint, queue_name, function, error_type,
               count(*) FILTER (WHERE resolved_at IS NULL) AS unresolved,
               count(*) FILTER (WHERE resolved_at IS NOT NULL) AS resolved
        FROM deleted
        GROUP BY fingerprint, queue_name, function, error_type
    ) AS d
    WHERE g.fingerprint = d.fingerprint AND g.queue_name = d.queue_name
      AND g.function = d.function AND g.error_type = d.error_type;
    DELETE FROM dlq_groups AS g
    USING (SELECT DISTINCT fingerprint, queue_name, function, error_type FROM deleted) AS d
    WHERE g.unresolved_count = 0 AND g.resolved_count = 0
      AND g.fingerprint = d.fingerprint AND g.queue_name = d.queue_name
      AND g.function = d.function AND g.error_type = d.error_type;
    RETURN NULL;
END
$$;

CREATE FUNCTION dlq_groups_after_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM dlq_groups;
    RETURN NULL;
END
$$;

CREATE TRIGGER dlq_groups_insert AFTER INSERT ON dead_letter_queue
    REFERENCING NEW TABLE AS inserted FOR EACH STATEMENT EXECUTE FUNCTION dlq_groups_after_insert();
CREATE TRIGGER dlq_groups_update AFTER UPDATE ON dead_letter_queue
    REFERENCING OLD TABLE AS updated_old NEW TABLE AS updated_new
    FOR EACH STATEMENT EXECUTE FUNCTION dlq_groups_after_update();
CREATE TRIGGER dlq_groups_delete AFTER DELETE ON dead_letter_queue
    REFERENCING OLD TABLE AS deleted FOR EACH STATEMENT EXECUTE FUNCTION dlq_groups_after_delete();
CREATE TRIGGER dlq_groups_truncate AFTER TRUNCATE ON dead_letter_queue
    FOR EACH STATEMENT EXECUTE FUNCTION dlq_groups_after_truncate();

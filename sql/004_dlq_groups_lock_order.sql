-- dlq_groups triggers take their row locks in one order (the primary key's), whatever the
-- statement: a cleanup deleting 10,000 rows over hundreds of groups and captures inserting into
-- the same groups otherwise deadlocked (seen by `make bench`: Postgres broke each cycle after its
-- 1 s deadlock_timeout, stalling captures and once failing cleanup_dlq).

CREATE OR REPLACE FUNCTION dlq_groups_after_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1
    FROM dlq_groups AS g
    JOIN (SELECT DISTINCT n.fingerprint, n.queue_name, n.function, n.error_type
          FROM updated_new AS n JOIN updated_old AS o USING (id)
          WHERE (n.resolved_at IS NULL) <> (o.resolved_at IS NULL)) AS k
      ON g.fingerprint = k.fingerprint AND g.queue_name = k.queue_name
     AND g.function = k.function AND g.error_type = k.error_type
    ORDER BY g.fingerprint, g.queue_name, g.function, g.error_type
    FOR UPDATE OF g;

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

CREATE OR REPLACE FUNCTION dlq_groups_after_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1
    FROM dlq_groups AS g
    JOIN (SELECT DISTINCT fingerprint, queue_name, function, error_type FROM deleted) AS k
      ON g.fingerprint = k.fingerprint AND g.queue_name = k.queue_name
     AND g.function = k.function AND g.error_type = k.error_type
    ORDER BY g.fingerprint, g.queue_name, g.function, g.error_type
    FOR UPDATE OF g;

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

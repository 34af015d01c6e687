-- Redrive tasks (issue 19): a DLQ redrive as a tracked, throttled task with a circuit breaker.
-- The selection is frozen into redrive_task_items when the task is created (one INSERT ... SELECT),
-- so entries that fail later never join it. Counters on the task row are written only by the
-- executor holding the lease (fenced by lease_epoch), in the transaction that changes the items.

CREATE TABLE redrive_tasks (
    id                     uuid PRIMARY KEY,
    name                   text NOT NULL,
    reason                 text NOT NULL DEFAULT '',
    selection              jsonb NOT NULL,
    state                  text NOT NULL DEFAULT 'pending' CHECK (state IN (
                               'pending', 'running', 'paused', 'completed', 'cancelled', 'tripped')),
    state_reason           text,
    rate_per_second        double precision NOT NULL CHECK (rate_per_second > 0),
    max_in_flight          integer NOT NULL CHECK (max_in_flight > 0),
    breaker_min_outcomes   integer NOT NULL DEFAULT 20 CHECK (breaker_min_outcomes > 0),
    breaker_threshold      double precision NOT NULL DEFAULT 0.5
                               CHECK (breaker_threshold > 0 AND breaker_threshold <= 1),
    -- outcomes counted by the breaker start here (set on resume after a trip)
    breaker_base_succeeded integer NOT NULL DEFAULT 0,
    breaker_base_failed    integer NOT NULL DEFAULT 0,
    total                  integer NOT NULL CHECK (total >= 0),
    sent                   integer NOT NULL DEFAULT 0,
    succeeded              integer NOT NULL DEFAULT 0,
    failed_again           integer NOT NULL DEFAULT 0,
    skipped                integer NOT NULL DEFAULT 0,
    created_by             text NOT NULL,
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now(),
    started_at             timestamptz,
    first_sent_at          timestamptz,
    last_sent_at           timestamptz,
    finished_at            timestamptz,
    lease_owner            text,
    lease_until            timestamptz,
    lease_epoch            bigint NOT NULL DEFAULT 0
);
CREATE INDEX redrive_tasks_created_idx ON redrive_tasks (created_at DESC, id DESC);
CREATE INDEX redrive_tasks_live_idx ON redrive_tasks (created_at)
    WHERE state IN ('pending', 'running', 'paused', 'tripped', 'cancelled');

CREATE TABLE redrive_task_items (
    -- no foreign key to redrive_tasks: creating a task writes up to 100,000s of items in one
    -- statement, and a per-row RI check was a third of its time; items are written only by
    -- shared.redrive_tasks, in the transaction that creates their task (tasks are never deleted)
    task_id      uuid NOT NULL,
    seq          integer NOT NULL,
    -- no foreign key: cleanup_dlq may prune an old resolved entry; the item keeps its history
    dlq_entry_id uuid NOT NULL,
    queue_name   text NOT NULL,
    state        text NOT NULL DEFAULT 'pending' CHECK (state IN (
                     'pending', 'sent', 'succeeded', 'failed_again', 'skipped')),
    retry_job_id text,
    sent_at      timestamptz,
    outcome_at   timestamptz,
    PRIMARY KEY (task_id, seq)
);
CREATE INDEX redrive_task_items_open_idx ON redrive_task_items (task_id, state, seq)
    WHERE state IN ('pending', 'sent');
-- No index on dlq_entry_id: "is this entry already waiting in a live task?" is a hash anti-join
-- over the few live tasks' pending items (open_idx); a third index made creating a 100,000-entry
-- task twice as slow (596 ms -> 310 ms for the INSERT ... SELECT without it).

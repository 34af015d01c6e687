-- Issue 19: creating a task over a 100,000-entry failure group must answer in under 1 s. Writing
-- one redrive_task_items row (heap tuple + index entry) per frozen entry in the creating request
-- was over half of that time. The frozen selection is now written as chunks: one row per
-- CHUNK_SIZE entries (shared.redrive_tasks.selection), holding the entries' ids in order, ~100
-- rows for 100,000 entries. The executor turns the next chunk into pending items when
-- it runs short (shared.redrive_tasks.sending.explode_next_chunk), in its fenced transaction, and
-- deletes the chunk in that same transaction: an entry is in exactly one of the two places, and a
-- chunk's seq numbers (first_seq + ordinal - 1) continue the items' order. Until then the chunk
-- counts as the entries' pending items everywhere (live-task check, queues a task touches,
-- redrive_task_entries below).
CREATE TABLE redrive_task_chunks (
    task_id       uuid NOT NULL,
    first_seq     integer NOT NULL CHECK (first_seq > 0),
    -- the entries in order; an item's queue is read from its DLQ row when the chunk becomes items
    -- (a per-entry text array cost ~40 % of creation: slicing a varlena array walks it from the
    -- start, so cutting 100 chunks out of 100,000 names is quadratic; uuids are fixed-length)
    dlq_entry_ids uuid[] NOT NULL CHECK (cardinality(dlq_entry_ids) > 0),
    queues        text[] NOT NULL,  -- the distinct queues of the task's whole selection
    PRIMARY KEY (task_id, first_seq)
);

-- Every frozen entry of every task with its state: items, and the entries of chunks not yet turned
-- into items (pending). For reading (operators, tests); the executor's paths use the tables.
CREATE VIEW redrive_task_entries AS
SELECT task_id, seq, dlq_entry_id, state, retry_job_id, sent_at, outcome_at
FROM redrive_task_items
UNION ALL
SELECT c.task_id, c.first_seq + (e.ordinal - 1)::integer, e.dlq_entry_id, 'pending', NULL, NULL, NULL
FROM redrive_task_chunks AS c, unnest(c.dlq_entry_ids) WITH ORDINALITY AS e(dlq_entry_id, ordinal);

-- Creating a redrive task writes its whole frozen selection (100,000 items for a large failure
-- group) in one INSERT ... SELECT; each index on redrive_task_items is one more B-tree insert per
-- item. Issue 19's bench: the primary key was ~40 % of that statement's time, and nothing reads
-- by it: every read and write of items names the task and the item's state (pending or sent) and
-- orders or picks by seq, which redrive_task_items_open_idx (task_id, state, seq) serves. seq stays
-- unique per task by construction (row_number() in the one INSERT that freezes the selection).
ALTER TABLE redrive_task_items DROP CONSTRAINT redrive_task_items_pkey;

-- Incident controls (shared/controls): an operator's cancel of a queued/scheduled/retrying job
-- and abort of a running one leave a DLQ row (resolved at once), so nothing vanishes without a
-- trace. 'poison' is reserved for quarantined jobs (DESIGN "DLQ reasons gain poison, cancelled,
-- aborted"). The list is shared.dlq.reasons.DLQ_REASONS; a unit test checks both agree.
ALTER TABLE dead_letter_queue DROP CONSTRAINT dead_letter_queue_reason_check;
ALTER TABLE dead_letter_queue ADD CONSTRAINT dead_letter_queue_reason_check CHECK (reason IN (
    'exhausted', 'permanent', 'max_tries_exceeded', 'worker_lost', 'expired', 'function_not_found',
    'poison', 'cancelled', 'aborted'));

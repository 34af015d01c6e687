-- 001: every table the contract needs. Money is numeric(12,2); time is timestamptz (UTC).
-- Enum-like columns are text with CHECK constraints so values stay readable in psql.

CREATE TABLE users (
    id                      uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    email                   text NOT NULL CHECK (email = lower(email) AND position('@' in email) > 1),
    password_hash           text NOT NULL,
    role                    text NOT NULL CHECK (role IN ('admin', 'support')),
    totp_secret_encrypted   text NOT NULL,
    totp_last_used_step     bigint,
    disabled_at             timestamptz,
    locked_until            timestamptz,
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX users_email_key ON users (email);

CREATE TABLE login_attempts (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email           text NOT NULL,
    user_id         uuid REFERENCES users (id) ON DELETE CASCADE,
    ip              text,
    succeeded       boolean NOT NULL,
    attempted_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX login_attempts_user_time_idx ON login_attempts (user_id, attempted_at DESC) WHERE NOT succeeded;
CREATE INDEX login_attempts_ip_time_idx ON login_attempts (ip, attempted_at DESC);

CREATE TABLE admin_sessions (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id         uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    token_hash      bytea NOT NULL,
    mfa_passed      boolean NOT NULL,
    ip              text,
    user_agent      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL,
    revoked_at      timestamptz,
    CHECK (expires_at > created_at)
);
CREATE UNIQUE INDEX admin_sessions_token_hash_key ON admin_sessions (token_hash);
CREATE INDEX admin_sessions_user_idx ON admin_sessions (user_id) WHERE revoked_at IS NULL;

CREATE TABLE providers (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name                text NOT NULL,
    email               text NOT NULL,
    status              text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'inactive')),
    inactive_reason     text CHECK (inactive_reason IN ('insufficient_balance', 'cancelled', 'suspended')),
    balance             numeric(12, 2) NOT NULL DEFAULT 0,
    lead_price          numeric(12, 2) NOT NULL CHECK (lead_price > 0),
    last_assigned_at    timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    CHECK ((status = 'active') = (inactive_reason IS NULL))
);
-- distribute_lead: active providers, least recently assigned first (never-assigned first).
CREATE INDEX providers_active_rotation_idx ON providers (last_assigned_at ASC NULLS FIRST, id)
    WHERE status = 'active';
-- reactivate_subscriptions: the few inactive for lack of balance.
CREATE INDEX providers_insufficient_idx ON providers (id) WHERE inactive_reason = 'insufficient_balance';

CREATE TABLE leads (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    source          text NOT NULL DEFAULT 'web',
    payload         jsonb NOT NULL DEFAULT '{}'::jsonb,
    status          text NOT NULL DEFAULT 'new' CHECK (status IN ('new', 'distributed', 'unassigned')),
    created_at      timestamptz NOT NULL DEFAULT now(),
    distributed_at  timestamptz
);

CREATE TABLE lead_assignments (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    lead_id         uuid NOT NULL REFERENCES leads (id) ON DELETE RESTRICT,
    provider_id     uuid NOT NULL REFERENCES providers (id) ON DELETE RESTRICT,
    price           numeric(12, 2) NOT NULL CHECK (price > 0),
    status          text NOT NULL DEFAULT 'assigned' CHECK (status IN ('assigned', 'bad')),
    bad_reason      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    refunded_at     timestamptz,
    UNIQUE (lead_id, provider_id),
    CHECK ((status = 'bad') = (refunded_at IS NOT NULL))
);
-- provider inbox (report export): newest assignments of one provider.
CREATE INDEX lead_assignments_provider_time_idx ON lead_assignments (provider_id, created_at DESC, id DESC);

CREATE TABLE ledger_entries (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    provider_id     uuid NOT NULL REFERENCES providers (id) ON DELETE RESTRICT,
    kind            text NOT NULL CHECK (kind IN ('charge', 'refund', 'topup', 'adjustment')),
    amount          numeric(12, 2) NOT NULL CHECK (amount <> 0),
    assignment_id   uuid REFERENCES lead_assignments (id) ON DELETE RESTRICT,
    note            text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CHECK (kind <> 'charge' OR amount < 0),
    CHECK (kind NOT IN ('refund', 'topup') OR amount > 0)
);
-- reconcile_balances sums per provider; INCLUDE lets it run index-only.
CREATE INDEX ledger_entries_provider_idx ON ledger_entries (provider_id) INCLUDE (amount);
-- one charge and one refund per assignment, whatever retries do.
CREATE UNIQUE INDEX ledger_entries_assignment_kind_key ON ledger_entries (assignment_id, kind)
    WHERE assignment_id IS NOT NULL;

CREATE TABLE report_exports (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    provider_id     uuid NOT NULL REFERENCES providers (id) ON DELETE CASCADE,
    status          text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'running', 'done', 'failed')),
    row_count       integer CHECK (row_count >= 0),
    content         text,
    error_message   text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    completed_at    timestamptz
);
CREATE INDEX report_exports_provider_idx ON report_exports (provider_id, created_at DESC);

CREATE TABLE email_outbox (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    idempotency_key     text NOT NULL,
    to_address          text NOT NULL,
    template            text NOT NULL CHECK (template IN ('lead_assigned', 'report_ready', 'low_balance')),
    context             jsonb NOT NULL DEFAULT '{}'::jsonb,
    subject             text NOT NULL,
    body                text NOT NULL,
    backend             text NOT NULL CHECK (backend IN ('log', 'smtp')),
    status              text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'sent')),
    created_at          timestamptz NOT NULL DEFAULT now(),
    sent_at             timestamptz,
    CHECK ((status = 'sent') = (sent_at IS NOT NULL))
);
CREATE UNIQUE INDEX email_outbox_idempotency_key ON email_outbox (idempotency_key);

CREATE TABLE audit_log (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    occurred_at     timestamptz NOT NULL DEFAULT now(),
    actor           text NOT NULL,
    actor_user_id   uuid REFERENCES users (id) ON DELETE SET NULL,
    action          text NOT NULL,
    target_type     text,
    target_id       text,
    metadata        jsonb NOT NULL DEFAULT '{}'::jsonb,
    ip              text,
    request_id      text
);
CREATE INDEX audit_log_time_idx ON audit_log (occurred_at DESC);
CREATE INDEX audit_log_target_idx ON audit_log (target_type, target_id, occurred_at DESC);
CREATE INDEX audit_log_action_idx ON audit_log (action, occurred_at DESC);

CREATE TABLE dead_letter_queue (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    queue_name      text NOT NULL CHECK (queue_name IN ('distribute_lead', 'email_send', 'report_export', 'scheduler')),
    job_id          text NOT NULL,
    function        text NOT NULL,
    args            jsonb NOT NULL DEFAULT '[]'::jsonb,
    kwargs          jsonb NOT NULL DEFAULT '{}'::jsonb,
    error_type      text NOT NULL,
    error_message   text NOT NULL DEFAULT '',
    stack_trace     text NOT NULL DEFAULT '',
    fingerprint     text NOT NULL,
    attempts        integer NOT NULL CHECK (attempts >= 0),
    reason          text NOT NULL CHECK (reason IN (
                        'exhausted', 'permanent', 'max_tries_exceeded', 'worker_lost', 'expired',
                        'function_not_found')),
    enqueued_at     timestamptz,
    failed_at       timestamptz NOT NULL,
    captured_at     timestamptz NOT NULL DEFAULT now(),
    correlation_id  text,
    resolved_at     timestamptz,
    resolved_by     text,
    resolution      text CHECK (resolution IN ('retried', 'manual')),
    resolution_note text,
    retry_job_id    text,
    -- A retried job that fails again points back here. Cleanup sets it to NULL when the old
    -- resolved entry is pruned (the newer entry keeps its own payload and history).
    retry_of        uuid REFERENCES dead_letter_queue (id) ON DELETE SET NULL,
    search          tsvector GENERATED ALWAYS AS (
                        to_tsvector('simple', error_type || ' ' || error_message)) STORED,
    CONSTRAINT dead_letter_queue_queue_job_key UNIQUE (queue_name, job_id),
    CHECK ((resolved_at IS NULL) = (resolution IS NULL)),
    CHECK (resolution IS DISTINCT FROM 'retried' OR retry_job_id IS NOT NULL)
);
-- keyset listing newest first, all / per queue / unresolved-only.
CREATE INDEX dlq_failed_idx ON dead_letter_queue (failed_at DESC, id DESC);
CREATE INDEX dlq_queue_failed_idx ON dead_letter_queue (queue_name, failed_at DESC, id DESC);
CREATE INDEX dlq_unresolved_idx ON dead_letter_queue (queue_name, failed_at DESC, id DESC)
    WHERE resolved_at IS NULL;
-- grouping and filtering by fingerprint.
CREATE INDEX dlq_fingerprint_idx ON dead_letter_queue (fingerprint, failed_at DESC, id DESC);
-- cleanup of resolved entries by age.
CREATE INDEX dlq_resolved_at_idx ON dead_letter_queue (resolved_at) WHERE resolved_at IS NOT NULL;
CREATE INDEX dlq_retry_of_idx ON dead_letter_queue (retry_of) WHERE retry_of IS NOT NULL;
CREATE INDEX dlq_search_idx ON dead_letter_queue USING gin (search);

-- One row per cron tick: the primary key is what makes a tick run once across schedulers.
CREATE TABLE cron_runs (
    job             text NOT NULL,
    scheduled_for   timestamptz NOT NULL,
    started_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz,
    status          text NOT NULL DEFAULT 'running' CHECK (status IN ('running', 'success', 'failed')),
    counts          jsonb NOT NULL DEFAULT '{}'::jsonb,
    PRIMARY KEY (job, scheduled_for)
);

-- Issue 16 §2 (hardening of the HTTP edge).
--
-- login_attempts.pending: a login attempt is recorded *before* its password is hashed (a
-- reservation), so the per-address failure limit holds however many attempts arrive at once.
-- A pending row counts as a failure for its address; it is resolved after the check (succeeded,
-- or a failure) and only resolved failures count towards an account's lockout, so a correct login
-- racing wrong ones does not lock the account by itself. A process that dies mid-check leaves a
-- pending row: it keeps counting against the address for the window, never against the account.
ALTER TABLE login_attempts ADD COLUMN pending boolean NOT NULL DEFAULT false;

-- admin_sessions.last_seen_at: when the console last used the session, for the console's idle
-- timeout (CONSOLE_IDLE_TIMEOUT_SECONDS) besides the absolute expiry. Existing sessions start now.
ALTER TABLE admin_sessions ADD COLUMN last_seen_at timestamptz NOT NULL DEFAULT now();

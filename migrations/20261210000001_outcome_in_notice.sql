-- A caller that waits for a request's outcome and holds its input (a `/v1` call without a
-- stream, which sent it; a long poll, which read it) is answered from the request's
-- completion notice: the notice of a row stored with `outcome_in_notice` (a submit's; not a
-- batch's items) carries its outcome after its id (`<id> <json>`), so the caller does
-- not read the row again (`notices::FinalNotices`, `requests::RequestView::of_notice`). The
-- JSON holds every column a request's owner sees (`requests::RequestView`) but the caller's
-- own input (`prompt`, `context`, `parameters`, `metadata`). A notice payload must be
-- shorter than 8,000 bytes: a longer outcome is announced by its id alone, and read.
--
-- While the previous release runs: its listeners take only a bare id, so a request stored
-- with the flag (only by this release) wakes its waiters there through the sweep of awaited
-- requests (every 5 s) instead of its notice.
ALTER TABLE generation_requests ADD COLUMN outcome_in_notice BOOLEAN NOT NULL DEFAULT false;

CREATE OR REPLACE FUNCTION notify_generation_finished() RETURNS TRIGGER AS $$
DECLARE
    payload TEXT;
BEGIN
    -- a result that alone fills a notice is not copied into one only to be dropped
    IF NEW.outcome_in_notice AND COALESCE(octet_length(NEW.result), 0) < 8000 THEN
        payload := NEW.id::text || ' ' || jsonb_build_object(
            'status', NEW.status, 'model', NEW.model, 'result', NEW.result,
            'provider', NEW.provider, 'provider_model', NEW.provider_model,
            'served_model', NEW.served_model, 'tokens_used', NEW.tokens_used,
            'prompt_tokens', NEW.prompt_tokens, 'completion_tokens', NEW.completion_tokens,
            'finish_reason', NEW.finish_reason, 'tool_calls', NEW.tool_calls,
            'cost_usd', NEW.cost_usd, 'cached', NEW.cached, 'error_code', NEW.error_code,
            'error_message', NEW.error_message, 'attempts', NEW.attempts,
            'max_attempts', NEW.max_attempts, 'created_at', NEW.created_at,
            'started_at', NEW.started_at, 'completed_at', NEW.completed_at,
            'updated_at', NEW.updated_at)::text;
        IF octet_length(payload) < 8000 THEN
            PERFORM pg_notify('generation_finished', payload);
            RETURN NEW;
        END IF;
    END IF;
    PERFORM pg_notify('generation_finished', NEW.id::text);
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;

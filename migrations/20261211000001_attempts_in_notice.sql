-- A long poll (`GET /api/v1/generate/{id}?wait=`) answers with the request's attempt history
-- as well as its row. The completion notice of a request stored with `attempts_in_notice` (a
-- submit answered `202`, which its caller then polls: `requests::Notice::OutcomeAndAttempts`)
-- carries that history with its outcome (`attempt_history`, each attempt as a read of
-- `generation_attempts` gives it, in order), so the poll reads nothing after the notice. A
-- door's call (`Notice::Outcome`) answers without a history: its notice builds none. An outcome
-- whose history would not fit in a notice (8,000 bytes) is sent without it, and the history
-- is read.
--
-- The trigger runs at the end of the completing statement, after the attempt it finished is
-- written: the history it sends is the one that statement committed.
--
-- Safe while the previous release runs: it stores no row with the flag, and its listeners
-- ignore the fields they do not know.
ALTER TABLE generation_requests ADD COLUMN attempts_in_notice BOOLEAN NOT NULL DEFAULT false;

CREATE OR REPLACE FUNCTION notify_generation_finished() RETURNS TRIGGER AS $$
DECLARE
    outcome JSONB;
    payload TEXT;
BEGIN
    -- a result that alone fills a notice is not copied into one only to be dropped
    IF NEW.outcome_in_notice AND COALESCE(octet_length(NEW.result), 0) < 8000 THEN
        outcome := jsonb_build_object(
            'status', NEW.status, 'model', NEW.model, 'result', NEW.result,
            'provider', NEW.provider, 'provider_model', NEW.provider_model,
            'served_model', NEW.served_model, 'tokens_used', NEW.tokens_used,
            'prompt_tokens', NEW.prompt_tokens, 'completion_tokens', NEW.completion_tokens,
            'finish_reason', NEW.finish_reason, 'tool_calls', NEW.tool_calls,
            'cost_usd', NEW.cost_usd, 'cached', NEW.cached, 'error_code', NEW.error_code,
            'error_message', NEW.error_message, 'attempts', NEW.attempts,
            'max_attempts', NEW.max_attempts, 'created_at', NEW.created_at,
            'started_at', NEW.started_at, 'completed_at', NEW.completed_at,
            'updated_at', NEW.updated_at);
        IF NEW.attempts_in_notice THEN
            payload := NEW.id::text || ' ' || (outcome || jsonb_build_object('attempt_history',
                (SELECT COALESCE(jsonb_agg(jsonb_build_object(
                     'attempt', a.attempt, 'run', a.run, 'worker', a.worker,
                     'provider', a.provider, 'model', a.model, 'started_at', a.started_at,
                     'finished_at', a.finished_at, 'latency_ms', a.latency_ms,
                     'outcome', a.outcome, 'error_kind', a.error_kind,
                     'http_status', a.http_status, 'error_message', a.error_message)
                     ORDER BY a.attempt), '[]'::jsonb)
                 FROM generation_attempts a WHERE a.request_id = NEW.id)))::text;
            IF octet_length(payload) < 8000 THEN
                PERFORM pg_notify('generation_finished', payload);
                RETURN NEW;
            END IF;
        END IF;
        payload := NEW.id::text || ' ' || outcome::text;
        IF octet_length(payload) < 8000 THEN
            PERFORM pg_notify('generation_finished', payload);
            RETURN NEW;
        END IF;
    END IF;
    PERFORM pg_notify('generation_finished', NEW.id::text);
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;

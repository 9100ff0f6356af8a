-- Requests submitted on the streaming endpoint: their worker streams from the provider and
-- relays each token.
ALTER TABLE generation_requests ADD COLUMN stream BOOLEAN NOT NULL DEFAULT false;

-- One database, one schema and one role per service (docker compose; runs once, on an empty
-- data directory). A service's role owns its schema and has no access to another's.
-- The passwords are the compose file's; change both for anything but a trial.
REVOKE ALL ON SCHEMA public FROM PUBLIC;
DO $$
DECLARE svc text;
BEGIN
  FOREACH svc IN ARRAY ARRAY['provisioner', 'attacher', 'watcher', 'alerts'] LOOP
    EXECUTE format('CREATE ROLE %I LOGIN PASSWORD %L', svc, svc);
    EXECUTE format('CREATE SCHEMA %I AUTHORIZATION %I', svc, svc);
    -- The service migrates its schema at start and runs CREATE SCHEMA IF NOT EXISTS first.
    EXECUTE format('GRANT CREATE, CONNECT ON DATABASE %I TO %I', current_database(), svc);
  END LOOP;
END $$;

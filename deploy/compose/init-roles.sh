#!/bin/sh
# Runs once, when the postgres service initializes its volume (docker-entrypoint-initdb.d): the two
# roles of deploy/README.md ("Database roles"). The owner role owns the database and runs the
# migrations (the `migrate` service); the runtime role is what the producer and the workers log in
# as, and `syncfleet migrate` grants it what it needs. Passwords come from the environment.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v owner_password="$SYNCFLEET_OWNER_PASSWORD" -v runtime_password="$SYNCFLEET_RUNTIME_PASSWORD" <<'SQL'
CREATE ROLE syncfleet_owner LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'owner_password';
CREATE ROLE syncfleet_runtime LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'runtime_password';
ALTER DATABASE syncfleet OWNER TO syncfleet_owner;
REVOKE ALL ON DATABASE syncfleet FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE syncfleet TO syncfleet_runtime;
SQL

#!/bin/sh
# The gateway's own database on the stack's PostgreSQL (docker-compose.yml mounts this folder at
# /docker-entrypoint-initdb.d: the postgres image runs it once, on the first start of an empty data
# volume). Role `pivot` (password PIVOT_DB_PASSWORD), database `pivot` owned by it; the gateway
# creates and migrates its tables at start-up. On an existing volume, run the two statements by hand.
set -eu
psql -v ON_ERROR_STOP=1 -v pw="$PIVOT_DB_PASSWORD" --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<'SQL'
CREATE ROLE pivot LOGIN PASSWORD :'pw';
CREATE DATABASE pivot OWNER pivot;
SQL

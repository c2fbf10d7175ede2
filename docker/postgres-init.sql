-- Mounted into /docker-entrypoint-initdb.d/ by docker/compose.yaml. The postgres image runs it once, when the
-- `pgdata` volume is first initialised, as POSTGRES_USER, who then owns both databases.
CREATE DATABASE prefect;
CREATE DATABASE mlflow;

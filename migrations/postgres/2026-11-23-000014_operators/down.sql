DROP TABLE admin_generation;
ALTER TABLE users DROP COLUMN disabled_at;

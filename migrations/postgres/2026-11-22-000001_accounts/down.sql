DROP TABLE refresh_tokens;
DROP TABLE machines;
DROP TABLE users;

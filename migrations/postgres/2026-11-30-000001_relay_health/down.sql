DROP TABLE relay_health;

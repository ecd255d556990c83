-- A database made by xianliao before Alembic (commit f380933: schema_version 1), dumped with
-- sqlite3's iterdump: test_schema.py builds a file from it and upgrades it in place.
BEGIN TRANSACTION;
CREATE TABLE admin_actions (
	id INTEGER NOT NULL, 
	user_id BIGINT NOT NULL, 
	action VARCHAR(32) NOT NULL, 
	detail TEXT, 
	allowed BOOLEAN NOT NULL, 
	created_at DATETIME NOT NULL, 
	PRIMARY KEY (id)
);
INSERT INTO "admin_actions" VALUES(1,42,'review','approve 1',1,'2026-12-02 16:13:28.040901');
CREATE TABLE chats (
	id BIGINT NOT NULL, 
	type VARCHAR(16) NOT NULL, 
	title VARCHAR(256), 
	created_at DATETIME NOT NULL, 
	PRIMARY KEY (id)
);
INSERT INTO "chats" VALUES(7,'private',NULL,'2026-12-02 16:13:28.030493');
CREATE TABLE exchanges (
	id INTEGER NOT NULL, 
	user_id BIGINT NOT NULL, 
	chat_id BIGINT NOT NULL, 
	message_id BIGINT, 
	source VARCHAR(16) NOT NULL, 
	user_text TEXT NOT NULL, 
	reply_text TEXT NOT NULL, 
	created_at DATETIME NOT NULL, 
	latency_ms FLOAT NOT NULL, 
	model_version VARCHAR(64) NOT NULL, 
	decode_options TEXT NOT NULL, 
	review_status VARCHAR(16) NOT NULL, 
	edited_reply TEXT, 
	reviewed_by BIGINT, 
	reviewed_at DATETIME, 
	PRIMARY KEY (id), 
	CONSTRAINT uq_exchanges_chat_message UNIQUE (chat_id, message_id), 
	FOREIGN KEY(user_id) REFERENCES users (id) ON DELETE CASCADE, 
	FOREIGN KEY(chat_id) REFERENCES chats (id) ON DELETE CASCADE
);
INSERT INTO "exchanges" VALUES(1,7,7,1,'telegram','你好','你好呀','2026-01-02 03:04:05.000000',12.5,'v1','{}','approved',NULL,42,'2026-12-02 16:13:28.037680');
CREATE TABLE feedback (
	id INTEGER NOT NULL, 
	exchange_id INTEGER NOT NULL, 
	user_id BIGINT NOT NULL, 
	value SMALLINT NOT NULL, 
	created_at DATETIME NOT NULL, 
	PRIMARY KEY (id), 
	CONSTRAINT uq_feedback_user UNIQUE (exchange_id, user_id), 
	FOREIGN KEY(exchange_id) REFERENCES exchanges (id) ON DELETE CASCADE
);
INSERT INTO "feedback" VALUES(1,1,7,1,'2026-12-02 16:13:28.036840');
CREATE TABLE promotions (
	id INTEGER NOT NULL, 
	run_id INTEGER, 
	checkpoint TEXT NOT NULL, 
	previous_checkpoint TEXT, 
	promoted_by BIGINT, 
	forced BOOLEAN NOT NULL, 
	metrics TEXT, 
	created_at DATETIME NOT NULL, 
	PRIMARY KEY (id), 
	FOREIGN KEY(run_id) REFERENCES training_runs (id) ON DELETE SET NULL
);
INSERT INTO "promotions" VALUES(1,1,'runs/1/best.pt',NULL,42,0,NULL,'2026-12-02 16:13:28.043758');
CREATE TABLE schema_version (
	version INTEGER NOT NULL, 
	PRIMARY KEY (version)
);
INSERT INTO "schema_version" VALUES(1);
CREATE TABLE training_runs (
	id INTEGER NOT NULL, 
	started_by BIGINT, 
	started_at DATETIME NOT NULL, 
	finished_at DATETIME, 
	status VARCHAR(16) NOT NULL, 
	params TEXT NOT NULL, 
	metrics TEXT, 
	checkpoint_path TEXT, 
	log TEXT, 
	PRIMARY KEY (id)
);
INSERT INTO "training_runs" VALUES(1,42,'2026-12-02 16:13:28.042018','2026-12-02 16:13:28.042678','succeeded','{"steps": 10}','{"loss": 2.0}','runs/1/best.pt',NULL);
CREATE TABLE users (
	id BIGINT NOT NULL, 
	username VARCHAR(64), 
	first_name VARCHAR(128), 
	language_code VARCHAR(16), 
	created_at DATETIME NOT NULL, 
	last_seen_at DATETIME NOT NULL, 
	PRIMARY KEY (id)
);
INSERT INTO "users" VALUES(7,'alice','Alice',NULL,'2026-12-02 16:13:28.027286','2026-12-02 16:13:28.027294');
CREATE INDEX ix_admin_actions_user_id ON admin_actions (user_id);
CREATE INDEX ix_exchanges_user_id ON exchanges (user_id);
CREATE INDEX ix_exchanges_review_status ON exchanges (review_status);
CREATE INDEX ix_exchanges_created_at ON exchanges (created_at);
CREATE INDEX ix_feedback_user_id ON feedback (user_id);
COMMIT;

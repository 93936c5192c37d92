PRAGMA foreign_keys=OFF;
BEGIN TRANSACTION;
CREATE TABLE lauf_meta (
	"key" VARCHAR(64) NOT NULL, 
	value TEXT NOT NULL, 
	PRIMARY KEY ("key")
);
INSERT INTO lauf_meta VALUES('schema_version','1');
INSERT INTO lauf_meta VALUES('graph_hash','bcc6460537103a2d154747d5a0b47af5dde1a85d91259b9420081699bb489f16');
CREATE TABLE lauf_tasks (
	id VARCHAR NOT NULL, 
	seq INTEGER NOT NULL, 
	state VARCHAR(16) NOT NULL, 
	active INTEGER NOT NULL, 
	waiting INTEGER NOT NULL, 
	requirements VARCHAR NOT NULL, 
	max_workers INTEGER NOT NULL, 
	priority INTEGER NOT NULL, 
	retries INTEGER, 
	running INTEGER NOT NULL, 
	sealed INTEGER NOT NULL, 
	fingerprint TEXT, 
	last_fingerprint TEXT, 
	built_at INTEGER, 
	changed_at INTEGER, 
	failed_count INTEGER NOT NULL, 
	killed_count INTEGER NOT NULL, 
	reason TEXT, 
	info TEXT, 
	updated FLOAT NOT NULL, 
	event_id INTEGER, 
	PRIMARY KEY (id), 
	CONSTRAINT fk_task_event FOREIGN KEY(event_id) REFERENCES lauf_events (id)
);
INSERT INTO lauf_tasks VALUES('a',1,'completed',1,0,'',1,0,NULL,0,0,'fp-a','fp-a',4,4,0,0,NULL,NULL,1796182098.5644876957,4);
INSERT INTO lauf_tasks VALUES('b',2,'pending',1,0,'',1,0,NULL,0,0,NULL,NULL,NULL,NULL,0,0,'new task',NULL,1796182098.4698634147,2);
CREATE TABLE lauf_workers (
	id VARCHAR NOT NULL, 
	host VARCHAR NOT NULL, 
	pid INTEGER NOT NULL, 
	labels VARCHAR NOT NULL, 
	state VARCHAR(16) NOT NULL, 
	started FLOAT NOT NULL, 
	heartbeat FLOAT NOT NULL, 
	expires FLOAT NOT NULL, 
	PRIMARY KEY (id)
);
INSERT INTO lauf_workers VALUES('w1','h',1,'','alive',1796182098.5525033473,1796182098.5525033473,1796182158.5525033473);
CREATE TABLE lauf_edges (
	task VARCHAR NOT NULL, 
	dep VARCHAR NOT NULL, 
	PRIMARY KEY (task, dep), 
	FOREIGN KEY(task) REFERENCES lauf_tasks (id) ON DELETE CASCADE, 
	FOREIGN KEY(dep) REFERENCES lauf_tasks (id) ON DELETE CASCADE
);
INSERT INTO lauf_edges VALUES('b','a');
CREATE TABLE lauf_assignments (
	task VARCHAR NOT NULL, 
	worker VARCHAR NOT NULL, 
	since FLOAT NOT NULL, 
	PRIMARY KEY (task, worker), 
	FOREIGN KEY(task) REFERENCES lauf_tasks (id) ON DELETE CASCADE, 
	FOREIGN KEY(worker) REFERENCES lauf_workers (id)
);
CREATE TABLE lauf_events (
	id INTEGER NOT NULL, 
	task_id VARCHAR NOT NULL, 
	state VARCHAR(16) NOT NULL, 
	fingerprint TEXT, 
	worker VARCHAR, 
	time FLOAT NOT NULL, 
	reason TEXT, 
	PRIMARY KEY (id), 
	FOREIGN KEY(task_id) REFERENCES lauf_tasks (id) ON DELETE CASCADE
);
INSERT INTO lauf_events VALUES(1,'a','pending',NULL,'w0',1796182098.4698634147,'new task');
INSERT INTO lauf_events VALUES(2,'b','pending',NULL,'w0',1796182098.4698634147,'new task');
INSERT INTO lauf_events VALUES(3,'a','running',NULL,'w1',1796182098.5581271647,NULL);
INSERT INTO lauf_events VALUES(4,'a','completed','fp-a','w1',1796182098.5644876957,NULL);
CREATE INDEX ix_tasks_todo ON lauf_tasks (requirements) WHERE state IN ('pending', 'invalidated') AND active = 1;
CREATE INDEX ix_tasks_failed ON lauf_tasks (seq) WHERE state IN ('failed', 'killed') AND active = 1;
CREATE INDEX ix_tasks_ready ON lauf_tasks (requirements, priority DESC, seq) WHERE state IN ('pending', 'invalidated') AND waiting = 0 AND active = 1;
CREATE INDEX ix_tasks_running ON lauf_tasks (seq) WHERE state = 'running';
CREATE INDEX ix_tasks_joinable ON lauf_tasks (priority DESC, seq) WHERE state = 'running' AND max_workers > 1;
CREATE INDEX ix_workers_alive ON lauf_workers (state, expires);
CREATE INDEX ix_edges_dep ON lauf_edges (dep, task);
CREATE INDEX ix_assignments_worker ON lauf_assignments (worker);
CREATE INDEX ix_events_task ON lauf_events (task_id, id);
COMMIT;

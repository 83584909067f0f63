-- The claim and wait queries read small partial indexes of hot tables. After a
-- burst (thousands of new runs or waits) stale statistics make the planner
-- scan and sort instead; analysing after 1% (or 1,000 rows) of change keeps
-- the plans right.
ALTER TABLE task_instances SET (autovacuum_analyze_scale_factor = 0.01,
                                autovacuum_analyze_threshold = 1000);
ALTER TABLE deferrals SET (autovacuum_analyze_scale_factor = 0.01,
                           autovacuum_analyze_threshold = 1000);
ALTER TABLE events SET (autovacuum_analyze_scale_factor = 0.02);

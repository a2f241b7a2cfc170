-- Schema version 5: what a job asks for (issue 14). (Version 4 is another migration: the runner applies every
-- file in the order of its number, each once.)
--
-- jobs.spec: one JSON object, only the parts the job asked for (metasched/model.py JobSpec): resources (nodes,
-- tasks, cores_per_task, memory in bytes per node, walltime in seconds, gpus_per_node, native_queue, account),
-- native (the scheduler flags, an array), env (variables), export ("all", "none" or an array of names), stdout,
-- stderr (path patterns) and join. '{}': nothing asked, the scheduler's defaults (every job before version 5).
ALTER TABLE jobs ADD COLUMN spec TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(spec));

-- The verifier stores what it decided for each usage (an encoded uts.v1.VerifierVerdicts, about
-- a byte per usage) instead of the whole messages (the job's usages twice, ~13 kB for 200
-- usages, compressed on every insert: the largest single cost of PostgreSQL at full load).
-- Rows written before keep their `decision` and are still read.
ALTER TABLE verifier_decisions ADD COLUMN verdicts bytea;
ALTER TABLE verifier_decisions ALTER COLUMN decision DROP NOT NULL;
ALTER TABLE verifier_decisions ADD CONSTRAINT verifier_decisions_content CHECK (verdicts IS NOT NULL OR decision IS NOT NULL);

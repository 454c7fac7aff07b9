-- Nothing to restore: the deleted rows had been published, and nothing reads them.
SELECT 1;

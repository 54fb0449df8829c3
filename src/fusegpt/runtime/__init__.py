"""Where and how a run executes, not what it computes: which device holds which block
(`placement`), the memory and compute a run will need (`plan`, `--dry-run`), splitting work over
torchrun ranks (`distributed`), and the checkpoint a crashed run resumes from (`checkpoint`)."""

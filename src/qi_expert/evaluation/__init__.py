"""The eval stage's logic: scoring (compile, run, judge), compliance (the @qi rules by the checker's
symbols), graded measures (graded), the arms (arms: which model, with retrieval or verification),
verified answers (verify) and summaries with paired comparisons (summary).
May import: core, typescript, data, generation."""

"""The data stages' logic: extract (corpus, extract, modules), validate (validate, augment, feedback),
format (formatting, dedup), index (retrieval), the benchmark tasks (bench), and the prompts a
model sees (prompting: built as the chat training rows are). May import: core, typescript."""

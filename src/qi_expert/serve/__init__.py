"""Serving the model: qi-expert serve with verified answers (serving), client configs (clients), the
served-answer log and its checks (monitor), verdicts on served answers (verdicts).
May import: core, typescript, data, generation, evaluation, export."""

"""The train stage's logic: the Axolotl config (axolotl_config), the plugin that runs inside Axolotl
(axolotl_plugin, labeled_logits), its launch (axolotl_main), and inputs, fingerprints,
checkpoints and reports (training). May import: core, typescript, data, generation."""

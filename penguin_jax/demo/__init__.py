"""The Penguin recipe in miniature (`launch.demo`): every stage, the export, the
evaluations and the benchmarks run as the project's own commands on a generated corpus
(`recipe`), its report (`recipe_report`) and the small SigLIP-style teacher it trains for
stage 1a (`siglip`). Above the run layer: it uses training, inference, export and the
benchmarks; nothing of the library uses it."""

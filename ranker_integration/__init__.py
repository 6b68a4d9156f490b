"""Stage 3 for ranking teams: the declarative feature config, a point-in-time-correct training set from
the offline store, an example TensorFlow ranker, and the end-to-end demo pipeline."""

"""Stage 3 for ranking teams, consumers of the features only: the declarative feature config and its
validator, a point-in-time-correct training set from the offline store, an example TensorFlow ranker
and its request-time scorer."""

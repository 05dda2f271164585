"""The outer (meta) loop of LKD: the loss learner, its hypergradient estimators, outer objectives, snapshot pool
and validation-batch stream."""

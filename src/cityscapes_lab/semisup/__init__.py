"""Semi-supervised approaches: the study's pure rules, pseudo-labelling, EvalNet, the approach recipes and the
generation runner."""

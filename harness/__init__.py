"""What the tests and the benchmarks share: a real copy of the project to run commands in
(project), the servers they start on 127.0.0.1 (servers), and the reading of a training
stage's timeline and Keras' epoch lines (timeline). Nothing here is part of the pipeline."""

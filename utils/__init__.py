"""Reusable code for the notebooks of the course that accompanies *Pretrain Vision and Large Language Models in
Python*. Each module stands alone: copy the file you need into your project (its docstring names any other
`utils` module it needs)."""

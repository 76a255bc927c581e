"""The DAG's steps, one module each; every file format lives beside the code that writes it."""

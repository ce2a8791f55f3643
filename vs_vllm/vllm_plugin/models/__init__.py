"""One file per architecture: the vLLM model + processor subclasses that select visual tokens."""

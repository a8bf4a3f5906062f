"""Prompt templates of the LLM recipes (package data: one folder per recipe kind, read by thresher.llm_recipes)."""

"""Thresher curation library: every stage of finetuning-data curation, free of any orchestrator."""

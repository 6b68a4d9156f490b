"""DeepSpeed training of HLLM (stages 1-2), the SASRec baseline, and freezing into a bundle (stage 3)."""

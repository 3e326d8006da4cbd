"""Local small language model: GGUF -> ONNX build, generation engine, faithfulness guard.

Modules (one job each):

* ``quant``        -- GGUF block formats (Q4_0, Q4_1, Q8_0, F16, F32) decoded into the
                      exact MatMulNBits / GatherBlockQuantized form.
* ``gguf_model``   -- reads a LLaMA-architecture GGUF: hyper-parameters, tensors, vocabulary.
* ``graph``        -- writes the ONNX decoder (KV cache) from those tensors.
* ``reference``    -- numpy fp32 forward pass of the dequantized weights (the yardstick).
* ``tokenizer``    -- byte-level BPE ``tokenizers`` tokenizer from the GGUF's vocab and merges.
* ``chat``         -- the chat template, rendered without a template engine.
* ``manifest``     -- sha256 manifest: write and verify.
* ``build``        -- the build: GGUF in, model directory out (what ``edged models pull`` calls).
* ``engine``       -- generation on onnxruntime: KV cache, sampling, stops, deadline, streaming.
* ``guard``        -- rejects a phrasing that states a number, unit or metric not in the facts.

Nothing in this package downloads anything at run time.
"""

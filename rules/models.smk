# Stage 0: resolve each configured model once into a plain Hugging Face folder + results/models/{model}/model.json.
from lmft.paths import model_manifest


rule prepare_model:
    output:
        model_manifest(RESULTS, "{model}"),
    params:
        source=lambda w: PLAN.model_source(w.model),
    log:
        "logs/prepare_model/{model}.log",
    benchmark:
        "benchmarks/prepare_model/{model}.tsv"
    resources:
        mem_mb=4000,
    script:
        "../workflow/scripts/prepare_model.py"

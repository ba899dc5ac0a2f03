"""Numerical building blocks shared by the explanation methods, as timm keeps its layers apart from its models.

- :mod:`compute.layers.attention`: head fusion, the class-token row of a product of per-block matrices
  (attention rollout and its gradient-weighted relatives), the gradient-weighted class-token row (Grad-CAM on an
  attention map), the positive part of a head-averaged product;
- :mod:`compute.layers.maps`: per-image min-max normalisation of maps;
- :mod:`compute.layers.lrp`: batched relevance-propagation rules (linear, matmul, skip addition);
- :mod:`compute.layers.vit_relevance`: those rules chained through a timm ViT, from the head to the blocks;
- :mod:`compute.layers.maxflow`: exact maximum flows through layered graphs (attention flow; numpy/scipy only);
  :mod:`compute.layers.flow_pool`: many of them in parallel processes.

A method in :mod:`compute.methods` composes these; a formula used by two methods lives here once, so that the
two cannot drift apart.
"""

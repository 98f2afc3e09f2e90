# Vendored unchanged from https://github.com/karpathy/minGPT
#   file: mingpt/__init__.py at commit 37baab71b9abea1b76ab957409a1cc2fbfba8a26
#   license: MIT, minGPT.txt (tests/compat/programs/LICENSES/)
# Everything below this header is the original file.

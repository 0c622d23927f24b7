/* fuzz_export: ./export's whole program on a fuzzed command line and files:
   its options, Hugging Face folders (config.json, safetensors and their
   index, the tokenizer files) and every model and tokenizer format it reads. */
#define main export_main
#include "../../export.c"
#undef main

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    FuzzInput f;
    if (fuzz_unpack(&f, data, size)) return -1;
    int inside = 1; /* only files the input brings: no /dev/zero, no writing outside the scratch folder */
    for (int i = 1; i < f.argc; i++)
        if (f.argv[i][0] == '/' || strstr(f.argv[i], "..")) inside = 0;
    if (inside) fuzz_call(export_main, &f);
    fuzz_input_free(&f);
    return 0;
}

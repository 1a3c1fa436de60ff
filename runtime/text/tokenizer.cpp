#include "runtime/text/tokenizer.h"

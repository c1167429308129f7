// The demo's prompts: one token list per user, cut to fit the context, optionally wrapped in
// the Mistral v1 instruct format, and the long-context "book" prompt.
#pragma once
#include <string>
#include <vector>

#include "runtime/tokenizer.h"

namespace mx {

struct DemoPrompt {
  std::string text;          // the prompt as given (user text, never with [INST] tags)
  std::vector<int> tokens;   // what the model reads: BOS first, wrapped when instruct, cut to fit
  int original_tokens = 0;   // tokens before any cut
  bool truncated = false;
};

// Encodes `text` (BOS first; with `instruct`, as encode_instruct does). When that is longer than
// max_tokens, the start is cut and the end (where the question is) kept; with `instruct` the cut
// is made on the user text before wrapping, so "[INST]" opens and " [/INST]" closes the result.
// Throws mx::Error when max_tokens cannot hold even the wrapper and one token of text.
DemoPrompt make_demo_prompt(const Tokenizer& tok, const std::string& text, bool instruct,
                            int max_tokens);

// The long-context prompt: kBookQuestion, a blank line, then the text of the first
// `excerpt_tokens` tokens of `novel` (tokenized alone). If the whole prompt is longer than
// max_tokens the excerpt is shortened (its end cut, so the question at the front survives) and
// the result is marked truncated. With `instruct` it is wrapped after the cut.
extern const char* const kBookQuestion;
DemoPrompt make_book_prompt(const Tokenizer& tok, const std::string& novel, int excerpt_tokens,
                            bool instruct, int max_tokens);

// The text of the first n tokens of `text`, tokenized without BOS, ending at a word boundary
// when one is near so that it re-encodes to the same n tokens; *n_out gets its token count.
std::string first_tokens_text(const Tokenizer& tok, const std::string& text, int n, int* n_out);

// Users' prompts: user i gets prompts[i % prompts.size()] (prompts repeat when the batch is
// larger than the list; extra prompts are left out when it is smaller).
std::vector<std::string> assign_prompts(const std::vector<std::string>& prompts, int batch);

// Reads a whole text file; throws mx::Error naming it when it cannot.
std::string read_text_file(const std::string& path);

}  // namespace mx

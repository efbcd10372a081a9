// The iOS shell's view of the native core: `@import MalmEdge;` through edge/native/include/module.modulemap
// (what Swift's `import MalmEdge` reads), then the calls a Swift app makes, run on a real bundle.
//
//   ios_module_check BUNDLE RGB8FILE WIDTH HEIGHT K BAD_BUNDLE
//
// Prints "row<TAB>score<TAB>id" per result of malm_search_rgb8, then "error<TAB>status<TAB>message" for
// malm_open on BAD_BUNDLE. Exit 0 when every call behaved, 1 otherwise.
@import MalmEdge;

#include <stdio.h>
#include <stdlib.h>

static unsigned char *read_file(const char *path, long *size) {
  FILE *file = fopen(path, "rb");
  if (!file) return NULL;
  fseek(file, 0, SEEK_END);
  *size = ftell(file);
  fseek(file, 0, SEEK_SET);
  unsigned char *data = malloc((size_t)*size + 1);
  if (data && fread(data, 1, (size_t)*size, file) != (size_t)*size) {
    free(data);
    data = NULL;
  }
  fclose(file);
  return data;
}

int main(int argc, char **argv) {
  if (argc != 7) {
    fprintf(stderr, "usage: %s BUNDLE RGB8FILE WIDTH HEIGHT K BAD_BUNDLE\n", argv[0]);
    return 2;
  }
  int width = atoi(argv[3]), height = atoi(argv[4]), k = atoi(argv[5]);
  long size = 0;
  unsigned char *rgb = read_file(argv[2], &size);
  if (!rgb || size != (long)width * height * 3) {
    fprintf(stderr, "%s: not a %dx%d RGB8 file\n", argv[2], width, height);
    return 1;
  }
  malm_open_options options = malm_default_options();
  options.threads = 1;
  malm_engine *engine = NULL;
  malm_status status = malm_open(argv[1], &options, &engine);
  if (status != MALM_OK) {
    fprintf(stderr, "malm_open: %d %s\n", (int)status, malm_last_error());
    return 1;
  }
  malm_results *results = NULL;
  status = malm_search_rgb8(engine, rgb, width, height, width * 3, k, &results);
  if (status != MALM_OK) {
    fprintf(stderr, "malm_search_rgb8: %d %s\n", (int)status, malm_last_error());
    return 1;
  }
  for (int i = 0; i < malm_results_count(results); ++i) {
    printf("%lld\t%.7g\t%s\n", (long long)malm_results_row(results, i), (double)malm_results_score(results, i),
           malm_results_id(results, i));
  }
  malm_results_free(results);
  malm_close(engine);
  free(rgb);

  malm_engine *bad = NULL;
  status = malm_open(argv[6], &options, &bad);
  printf("error\t%d\t%s\n", (int)status, malm_last_error());
  return status == MALM_ERR_BUNDLE && bad == NULL ? 0 : 1;
}

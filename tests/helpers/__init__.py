"""What the tests share: synthetic data, tiny projects, param patches, local servers, and the
static import closure of a stage's command."""

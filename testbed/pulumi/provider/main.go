// pulumi-resource-openstack for the local test cloud: see go.mod.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"sort"

	"github.com/pulumi/pulumi-terraform-bridge/v3/pkg/tfbridge"
	shim "github.com/pulumi/pulumi-terraform-bridge/v3/pkg/tfshim"
	shimv2 "github.com/pulumi/pulumi-terraform-bridge/v3/pkg/tfshim/sdk-v2"
	"github.com/pulumi/pulumi/sdk/v3/go/common/tokens"
	"github.com/terraform-provider-openstack/terraform-provider-openstack/v3/openstack"
)

// version is the plugin version the pinned pulumi_openstack SDK asks for (set with -ldflags -X).
var version = "0.0.0-dev"

// resources and functions the llmcloud program uses, by Terraform name, with the SDK's tokens.
var resources = map[string]string{
	"openstack_blockstorage_volume_v3":             "openstack:blockstorage/volume:Volume",
	"openstack_compute_instance_v2":                "openstack:compute/instance:Instance",
	"openstack_compute_keypair_v2":                 "openstack:compute/keypair:Keypair",
	"openstack_networking_floatingip_associate_v2": "openstack:networking/floatingIpAssociate:FloatingIpAssociate",
	"openstack_networking_floatingip_v2":           "openstack:networking/floatingIp:FloatingIp",
	"openstack_networking_network_v2":              "openstack:networking/network:Network",
	"openstack_networking_port_v2":                 "openstack:networking/port:Port",
	"openstack_networking_router_interface_v2":     "openstack:networking/routerInterface:RouterInterface",
	"openstack_networking_router_v2":               "openstack:networking/router:Router",
	"openstack_networking_secgroup_rule_v2":        "openstack:networking/secGroupRule:SecGroupRule",
	"openstack_networking_secgroup_v2":             "openstack:networking/secGroup:SecGroup",
	"openstack_networking_subnet_v2":               "openstack:networking/subnet:Subnet",
	"openstack_objectstorage_container_v1":         "openstack:objectstorage/container:Container",
	"openstack_sharedfilesystem_share_access_v2":   "openstack:sharedfilesystem/shareAccess:ShareAccess",
	"openstack_sharedfilesystem_share_v2":          "openstack:sharedfilesystem/share:Share",
}

var functions = map[string]string{
	"openstack_compute_keypair_v2":               "openstack:compute/getKeypair:getKeypair",
	"openstack_images_image_v2":                  "openstack:images/getImage:getImage",
	"openstack_networking_network_v2":            "openstack:networking/getNetwork:getNetwork",
	"openstack_sharedfilesystem_sharenetwork_v2": "openstack:sharedfilesystem/getShareNetwork:getShareNetwork",
}

// fields holds the property renames the SDK has beyond the bridge's default naming.
var fields = map[string]map[string]*tfbridge.SchemaInfo{
	"openstack_networking_subnet_v2": {"allocation_pool": {Name: "allocationPools"}},
}

func providerInfo() tfbridge.ProviderInfo {
	info := tfbridge.ProviderInfo{
		P:         shimv2.NewProvider(openstack.Provider()),
		Name:      "openstack",
		Version:   version,
		Resources: map[string]*tfbridge.ResourceInfo{},
		DataSources: map[string]*tfbridge.DataSourceInfo{},
		Config: map[string]*tfbridge.SchemaInfo{
			"cloud":       {Default: &tfbridge.DefaultInfo{EnvVars: []string{"OS_CLOUD"}}},
			"region":      {Default: &tfbridge.DefaultInfo{EnvVars: []string{"OS_REGION_NAME"}}},
			"insecure":    {Default: &tfbridge.DefaultInfo{EnvVars: []string{"OS_INSECURE"}}},
			"endpoint_type": {Default: &tfbridge.DefaultInfo{EnvVars: []string{"OS_ENDPOINT_TYPE"}}},
		},
	}
	for tf, tok := range resources {
		info.Resources[tf] = &tfbridge.ResourceInfo{Tok: tokens.Type(tok), Fields: fields[tf]}
	}
	for tf, tok := range functions {
		info.DataSources[tf] = &tfbridge.DataSourceInfo{Tok: tokens.ModuleMember(tok)}
	}
	info.SetAutonaming(255, "-")
	return info
}

// property is one Pulumi property of a resource or function, as this build names it.
type property struct {
	Name     string              `json:"name"`
	Terraform string             `json:"terraform"`
	Required bool                `json:"required"`
	Computed bool                `json:"computed"`
	Flat     bool                `json:"maxItemsOne,omitempty"`
	Nested   map[string]property `json:"nested,omitempty"`
}

func properties(schema shim.SchemaMap, infos map[string]*tfbridge.SchemaInfo) map[string]property {
	out := map[string]property{}
	schema.Range(func(key string, value shim.Schema) bool {
		info := infos[key]
		p := property{
			Name:      tfbridge.TerraformToPulumiNameV2(key, schema, infos),
			Terraform: key,
			Required:  value.Required(),
			Computed:  value.Computed(),
			Flat:      tfbridge.IsMaxItemsOne(value, info),
		}
		if res, ok := value.Elem().(shim.Resource); ok {
			var nested map[string]*tfbridge.SchemaInfo
			if info != nil && info.Elem != nil {
				nested = info.Elem.Fields
			}
			p.Nested = properties(res.Schema(), nested)
		}
		out[p.Name] = p
		return true
	})
	return out
}

// dumpNames prints, as JSON, every token this build serves and the Pulumi names of its properties:
// the unit tests compare them with the pinned SDK, so a mismatch shows there, not as a program bug.
func dumpNames(info tfbridge.ProviderInfo) error {
	type entry struct {
		Terraform  string              `json:"terraform"`
		Properties map[string]property `json:"properties"`
	}
	out := map[string]map[string]entry{"resources": {}, "functions": {}}
	for tf, ri := range info.Resources {
		res, ok := info.P.ResourcesMap().GetOk(tf)
		if !ok {
			return fmt.Errorf("the Terraform provider has no resource %s", tf)
		}
		out["resources"][string(ri.Tok)] = entry{tf, properties(res.Schema(), ri.Fields)}
	}
	for tf, di := range info.DataSources {
		ds, ok := info.P.DataSourcesMap().GetOk(tf)
		if !ok {
			return fmt.Errorf("the Terraform provider has no data source %s", tf)
		}
		out["functions"][string(di.Tok)] = entry{tf, properties(ds.Schema(), di.Fields)}
	}
	keys := []string{}
	for k := range out["resources"] {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", " ")
	return enc.Encode(out)
}

func main() {
	info := providerInfo()
	if len(os.Args) > 1 && os.Args[1] == "--llmcloud-names" {
		if err := dumpNames(info); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		return
	}
	tfbridge.Main("openstack", version, info, nil)
}
